//! Several GPUs on one node (issue 18), end to end over the simulated GPU: quotas per GPU
//! UUID whatever `CUDA_VISIBLE_DEVICES` does to CUDA's ordinals, NVML's indices never taken
//! for CUDA's, one process on two GPUs, peer-to-peer copies, and IPC handles.
//!
//! Each claim is judged by something independent of gpuslice as well as by the ledger: the
//! simulated GPU's own count of each device's memory (`device_used`), or NVML read by a
//! process without the shim.

mod util;

use std::time::Duration;

use gpuslice_ledger::{GpuUuid, Limits, TenantName, TenantQuota};
use util::*;

/// Two GPUs of different sizes, and tenant `tenant` with 512 MiB on the first and 1 GiB on
/// the second.
fn two_gpus_with_quotas(tenant: &str) -> Node {
    let node = Node::with_devices("2Gi,4Gi");
    write_quota(&node, tenant, &[(0, 512 * MIB), (1, GIB)]);
    node
}

/// Writes `tenant`'s quota file: these memory limits on these physical GPUs.
fn write_quota(node: &Node, tenant: &str, limits: &[(usize, u64)]) {
    let quota = TenantQuota {
        defaults: Limits::default(),
        per_gpu: limits
            .iter()
            .map(|&(gpu, bytes)| {
                (
                    GpuUuid::parse(&gpu_uuid(gpu)).expect("uuid"),
                    Limits {
                        memory_bytes: Some(bytes),
                        ..Default::default()
                    },
                )
            })
            .collect(),
    };
    node.ledger()
        .write_quota(&TenantName::new(tenant).expect("tenant name"), &quota)
        .expect("write quota");
}

/// cudaprobe through dlsym under the shim as `tenant`, with `CUDA_VISIBLE_DEVICES` set
/// when given.
fn probe(
    node: &Node,
    tenant: &str,
    visible: Option<&str>,
    commands: &[&str],
) -> std::process::Command {
    let mut command = node.probe(CallPath::Dlsym, tenant, None, commands);
    if let Some(visible) = visible {
        command.env("CUDA_VISIBLE_DEVICES", visible);
    }
    command
}

/// cudaprobe through dlsym without the shim.
fn bare_probe(node: &Node, visible: Option<&str>, commands: &[&str]) -> std::process::Command {
    let (program, leading) = util::probe(CallPath::Dlsym);
    let mut command = node.bare(program);
    command.args(leading).args(commands);
    if let Some(visible) = visible {
        command.env("CUDA_VISIBLE_DEVICES", visible);
    }
    command
}

#[test]
fn cuda_visible_devices_renumbers_what_cuda_enumerates_and_nvml_ignores_it() {
    let node = Node::with_devices("2Gi,4Gi,8Gi");
    let out = run_ok(&mut bare_probe(
        &node,
        Some("2,0"),
        &["devices", "where", "info", "nvml-index", "0", "nvml-same"],
    ));
    let devices = line(&out, "devices");
    assert_eq!(field(devices, "count"), 2, "{out}");
    assert_eq!(text_field(devices, "0"), gpu_uuid(2));
    assert_eq!(text_field(devices, "1"), gpu_uuid(0));
    let at = line(&out, "where");
    assert_eq!(
        (field(at, "ordinal"), text_field(at, "uuid")),
        (0, gpu_uuid(2).as_str())
    );
    assert_eq!(field(line(&out, "info"), "total"), 8 * GIB);
    // NVML numbers the GPUs as they are, whatever the variable says.
    let nvml = line(&out, "nvml-index");
    assert_eq!(text_field(nvml, "uuid"), gpu_uuid(0));
    assert_eq!(field(nvml, "total"), 2 * GIB);
    let same = line(&out, "nvml-same");
    assert_eq!((field(same, "index"), field(same, "total")), (2, 8 * GIB));

    let by_uuid = run_ok(&mut bare_probe(&node, Some(&gpu_uuid(1)), &["devices"]));
    assert_eq!(field(line(&by_uuid, "devices"), "count"), 1);
    assert_eq!(text_field(line(&by_uuid, "devices"), "0"), gpu_uuid(1));
    // The first entry that names no device ends the list.
    let cut = run_ok(&mut bare_probe(&node, Some("1,5,0"), &["devices"]));
    assert_eq!(field(line(&cut, "devices"), "count"), 1);
    // None visible: cuInit says there is no device (CUDA_ERROR_NO_DEVICE).
    let none = run_ok(&mut bare_probe(&node, Some(""), &[]));
    assert_eq!(field(line(&none, "init"), "rc"), 100, "{none}");
}

/// `CUDA_VISIBLE_DEVICES=1,0`: CUDA's ordinal 0 is the second GPU. The process is charged
/// there, by UUID, and the views of the shim's `cuMemGetInfo` and of its NVML for that same
/// GPU agree; NVML index 0 (the first GPU) shows the first GPU's quota.
#[test]
fn a_reordered_process_is_charged_on_the_gpu_it_really_uses() {
    let node = two_gpus_with_quotas("a");
    let mut holder = Running::spawn(&mut probe(
        &node,
        "a",
        Some("1,0"),
        &[
            "where",
            "alloc",
            "256M",
            "info",
            "nvml-same",
            "nvml-index",
            "0",
            "nvml-index",
            "1",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(10));
    let at = line(&out, "where");
    assert_eq!(
        (field(at, "ordinal"), text_field(at, "uuid")),
        (0, gpu_uuid(1).as_str())
    );
    assert_eq!(field(line(&out, "alloc"), "rc"), 0);
    let info = line(&out, "info");
    assert_eq!(field(info, "total"), GIB, "the second GPU's quota: {out}");
    assert_eq!(field(info, "free"), GIB - CONTEXT - 256 * MIB);
    assert_eq!(field(info, "device_total"), GIB);

    // The shim's NVML, asked about the same GPU (by its UUID, or by NVML's index 1), says
    // what its cuMemGetInfo said.
    let same = line(&out, "nvml-same");
    assert_eq!(field(same, "index"), 1);
    let second = out
        .lines()
        .find(|l| l.starts_with("nvml-index") && l.contains(&gpu_uuid(1)))
        .expect("nvml-index 1");
    for nvml in [same, second] {
        assert_eq!(field(nvml, "total"), field(info, "total"), "{nvml}");
        assert_eq!(field(nvml, "free"), field(info, "free"), "{nvml}");
    }
    // NVML index 0 is the first GPU, whose quota the process has not touched.
    let first = out
        .lines()
        .find(|l| l.starts_with("nvml-index") && l.contains(&gpu_uuid(0)))
        .expect("nvml-index 0");
    assert_eq!(
        (field(first, "total"), field(first, "used")),
        (512 * MIB, 0)
    );

    // The ledger charged the second GPU's UUID, and only it.
    assert_eq!(
        tenant_usage_on(&node, "a", &gpu_uuid(1)),
        CONTEXT + 256 * MIB
    );
    assert_eq!(tenant_usage_on(&node, "a", &gpu_uuid(0)), 0);
    // The simulated GPU agrees on where the memory is, and so does NVML without the shim.
    assert_eq!(device_used(&node, 1), CONTEXT + 256 * MIB);
    assert_eq!(device_used(&node, 0), 0);
    let outside = run_ok(&mut bare_probe(&node, Some("1"), &["nvml-index", "1"]));
    // The bare process's own context is on the second GPU too (it sees only that one).
    assert_eq!(
        field(line(&outside, "nvml-index"), "used"),
        2 * CONTEXT + 256 * MIB,
        "{outside}"
    );
}

/// Every allocation path, and memory the driver takes on its own (a loaded module, found
/// through NVML by the GPU's UUID near the limit), is charged to the GPU the reordered
/// ordinal names, up to that GPU's quota and not a byte on the other.
#[test]
fn every_allocation_path_is_charged_on_the_reordered_gpu() {
    let mut node = two_gpus_with_quotas("a");
    node.extra_env
        .push(("FAKECUDA_MODULE_FOOTPRINT".into(), "100Mi".into()));
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");
    let mut holder = Running::spawn(&mut probe(
        &node,
        "a",
        Some("1,0"),
        &[
            "module",
            ptx,
            "managed",
            "64M",
            "async",
            "64M",
            "pool-create",
            "pool-alloc-on",
            "0",
            "64M",
            "vmm",
            "64M",
            "array",
            "256",
            "256",
            "fill",
            "16M",
            "info",
            "hold",
        ],
    ));
    let out = holder.wait_for_line("holding", Duration::from_secs(10));
    for prefix in [
        "module",
        "managed",
        "async",
        "pool-create",
        "pool-alloc-on",
        "vmm",
        "array",
    ] {
        assert_eq!(field(line(&out, prefix), "rc"), 0, "{prefix}: {out}");
    }
    let taken = CONTEXT + 100 * MIB + 4 * 64 * MIB + 256 * 256 * 16;
    let chunk = 16 * MIB;
    let fill = line(&out, "fill");
    assert_eq!(field(fill, "bytes"), (GIB - taken) / chunk * chunk, "{out}");
    assert_eq!(field(fill, "rc"), 2);
    assert!(field(line(&out, "info"), "free") < chunk, "{out}");

    let charged = tenant_usage_on(&node, "a", &gpu_uuid(1));
    assert_eq!(charged, taken + field(fill, "bytes"));
    assert_eq!(
        device_used(&node, 1),
        charged,
        "the GPU holds what was charged"
    );
    assert_eq!(tenant_usage_on(&node, "a", &gpu_uuid(0)), 0);
    assert_eq!(device_used(&node, 0), 0);
}

/// Processes of one tenant that see the GPUs in different orders, or only some of them,
/// share each GPU's quota: it is the GPU's, found by UUID, never the ordinal's.
#[test]
fn limits_hold_per_gpu_whatever_each_process_makes_visible() {
    let node = two_gpus_with_quotas("a");
    let mut only_second = Running::spawn(&mut probe(
        &node,
        "a",
        Some("1"),
        &["devices", "alloc", "256M", "use-device", "1", "hold"],
    ));
    let out = only_second.wait_for_line("holding", Duration::from_secs(10));
    assert_eq!(field(line(&out, "devices"), "count"), 1);
    assert_eq!(field(line(&out, "alloc"), "rc"), 0);
    // Ordinal 1 does not exist for it (CUDA_ERROR_INVALID_DEVICE).
    assert_eq!(field(line(&out, "use-device"), "rc"), 101, "{out}");

    // Reordered: its ordinal 0 is the second GPU, whose quota the first process shares.
    let reordered = run_ok(&mut probe(&node, "a", Some("1,0"), &["fill", "64M"]));
    let fill = line(&reordered, "fill");
    assert_eq!(
        field(fill, "bytes"),
        GIB - 2 * CONTEXT - 256 * MIB,
        "{reordered}"
    );
    assert_eq!(field(fill, "rc"), 2);

    // Only the first GPU: its own quota, untouched by what the others hold.
    let first = run_ok(&mut probe(&node, "a", Some("0"), &["fill", "64M"]));
    assert_eq!(field(line(&first, "fill"), "bytes"), 512 * MIB - CONTEXT);

    assert_eq!(
        tenant_usage_on(&node, "a", &gpu_uuid(1)),
        CONTEXT + 256 * MIB
    );
    assert!(device_used(&node, 1) <= GIB);
}

/// One process with a context on each GPU: each allocation is charged to the GPU it was
/// made on, and each GPU refuses at its own quota.
#[test]
fn one_process_on_two_gpus_is_charged_and_refused_on_each() {
    let node = two_gpus_with_quotas("a");
    let mut both = Running::spawn(&mut probe(
        &node,
        "a",
        None,
        &[
            "fill",
            "64M",
            "use-device",
            "1",
            "fill",
            "64M",
            "where",
            "info",
            "use-device",
            "0",
            "alloc",
            "64M",
            "info",
            "new-context",
            "1",
            "alloc",
            "1M",
            "hold",
        ],
    ));
    let out = both.wait_for_line("holding", Duration::from_secs(10));
    let fills: Vec<_> = out.lines().filter(|l| l.starts_with("fill")).collect();
    assert_eq!(field(fills[0], "bytes"), 512 * MIB - CONTEXT, "{out}");
    assert_eq!(field(fills[1], "bytes"), GIB - CONTEXT, "{out}");
    assert!(fills.iter().all(|f| field(f, "rc") == 2), "{out}");
    assert_eq!(text_field(line(&out, "where"), "uuid"), gpu_uuid(1));
    let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(
        (field(infos[0], "total"), field(infos[0], "free")),
        (GIB, 0)
    );
    assert_eq!(
        (field(infos[1], "total"), field(infos[1], "free")),
        (512 * MIB, 0)
    );
    // Back on the first GPU, it is still full; a second context on the second GPU does not
    // fit its quota either.
    assert_eq!(field(line(&out, "alloc"), "rc"), 2);
    assert_eq!(field(line(&out, "new-context"), "rc"), 2, "{out}");

    assert_eq!(tenant_usage_on(&node, "a", &gpu_uuid(0)), 512 * MIB);
    assert_eq!(tenant_usage_on(&node, "a", &gpu_uuid(1)), GIB);
    assert_eq!(device_used(&node, 0), 512 * MIB);
    assert_eq!(device_used(&node, 1), GIB);
}

/// Peer access between the two GPUs and a `cuMemcpyPeer`: the copy arrives, and each end's
/// allocation (and each context) is charged to its own GPU; the peer's allocation is
/// refused at the peer's quota.
#[test]
fn peer_copies_charge_each_end_to_its_own_gpu() {
    let node = two_gpus_with_quotas("a");
    let mut copier = Running::spawn(&mut probe(
        &node,
        "a",
        None,
        &["peer-copy", "1", "64M", "peer-copy", "1", "1G", "hold"],
    ));
    let out = copier.wait_for_line("holding", Duration::from_secs(10));
    let copies: Vec<_> = out.lines().filter(|l| l.starts_with("peer-copy")).collect();
    let first = copies[0];
    assert_eq!(field(first, "rc"), 0, "{out}");
    assert_eq!(field(first, "can"), 1);
    assert_eq!(field(first, "enable"), 0);
    assert_eq!(
        field(first, "again"),
        704,
        "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"
    );
    assert_eq!(
        (field(first, "copy"), field(first, "match")),
        (0, 1),
        "{first}"
    );
    // 1 GiB fits neither GPU's quota now.
    assert_eq!(
        (field(copies[1], "src"), field(copies[1], "dst")),
        (2, 2),
        "{out}"
    );

    assert_eq!(
        tenant_usage_on(&node, "a", &gpu_uuid(0)),
        CONTEXT + 64 * MIB
    );
    assert_eq!(
        tenant_usage_on(&node, "a", &gpu_uuid(1)),
        CONTEXT + 64 * MIB
    );
    assert_eq!(device_used(&node, 0), CONTEXT + 64 * MIB);
    assert_eq!(device_used(&node, 1), CONTEXT + 64 * MIB);
}

/// An allocation exported with `cuIpcGetMemHandle` and opened by another tenant's process
/// on the other GPU: the opener sees the owner's data, is charged nothing for it (its own
/// quota is whole), and the owner stays charged while it is open and after it is closed.
#[test]
fn memory_opened_from_another_process_is_charged_once_to_its_owner() {
    let node = Node::with_devices("4Gi,4Gi");
    write_quota(&node, "owner", &[(1, GIB)]);
    write_quota(&node, "opener", &[(0, 512 * MIB), (1, 512 * MIB)]);
    let handle = node.root.path().join("handle");
    let handle_text = handle.display().to_string();
    let mut owner_probe = probe(
        &node,
        "owner",
        None,
        &[
            "alloc",
            "256M",
            "ipc-export",
            &handle_text,
            "ipc-open-self",
            "hold",
        ],
    );
    owner_probe.env("PROBE_DEVICE", "1");
    let mut owner = Running::spawn(&mut owner_probe);
    let out = owner.wait_for_line("holding", Duration::from_secs(10));
    assert_eq!(field(line(&out, "ipc-export"), "rc"), 0, "{out}");
    assert_eq!(
        field(line(&out, "ipc-export"), "same"),
        1,
        "one handle per allocation"
    );
    // A process cannot open its own export (CUDA_ERROR_INVALID_CONTEXT).
    assert_eq!(field(line(&out, "ipc-open-self"), "rc"), 201);
    let owned = CONTEXT + 256 * MIB;

    let mut opener = Running::spawn(&mut probe(
        &node,
        "opener",
        None,
        &[
            "ipc-open",
            &handle_text,
            "ipc-open",
            &handle_text,
            "info",
            "fill",
            "64M",
            "hold",
        ],
    ));
    let out = opener.wait_for_line("holding", Duration::from_secs(10));
    let opens: Vec<_> = out.lines().filter(|l| l.starts_with("ipc-open")).collect();
    assert_eq!(field(opens[0], "rc"), 0, "{out}");
    assert_eq!(field(opens[0], "pattern"), 1, "the owner's data: {out}");
    assert_eq!(field(opens[1], "same"), 1, "opened again: the same address");
    // Nothing of the owner's 256 MiB counts against the opener.
    assert_eq!(
        field(line(&out, "info"), "free"),
        512 * MIB - CONTEXT,
        "{out}"
    );
    assert_eq!(field(line(&out, "fill"), "bytes"), 512 * MIB - CONTEXT);

    assert_eq!(tenant_usage_on(&node, "owner", &gpu_uuid(1)), owned);
    assert_eq!(tenant_usage_on(&node, "owner", &gpu_uuid(0)), 0);
    assert_eq!(tenant_usage_on(&node, "opener", &gpu_uuid(0)), 512 * MIB);
    assert_eq!(tenant_usage_on(&node, "opener", &gpu_uuid(1)), 0);
    // Counted once on the device that holds it.
    assert_eq!(device_used(&node, 1), owned);
    assert_eq!(device_used(&node, 0), 512 * MIB);

    // Opened and closed by a third process (closed as often as opened, then once more):
    // the owner's charge does not move.
    write_quota(&node, "closer", &[(0, 256 * MIB)]);
    let closer = run_ok(&mut probe(
        &node,
        "closer",
        None,
        &["ipc-open", &handle_text, "info", "ipc-close", "ipc-close"],
    ));
    assert_eq!(field(line(&closer, "ipc-open"), "pattern"), 1, "{closer}");
    assert_eq!(field(line(&closer, "info"), "free"), 256 * MIB - CONTEXT);
    let closes: Vec<_> = closer
        .lines()
        .filter(|l| l.starts_with("ipc-close"))
        .collect();
    assert_eq!(field(closes[0], "rc"), 0, "{closer}");
    assert_eq!(field(closes[1], "rc"), 1, "closed already: {closer}");
    assert_eq!(tenant_usage_on(&node, "owner", &gpu_uuid(1)), owned);
    drop(opener);
    assert_eq!(tenant_usage_on(&node, "owner", &gpu_uuid(1)), owned);
    assert_eq!(device_used(&node, 1), owned);
}
