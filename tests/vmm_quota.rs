//! Virtual memory management (`cuMemCreate`, `cuMemMap`, ...) under the quota, end to end:
//! memory stays charged for as long as the driver keeps it, which is until the last of its
//! handle references and mappings is gone, however the program orders its calls.

mod util;

use std::path::Path;
use std::time::Duration;

use util::*;

/// Waits until `probe` prints "waiting" (its `wait-file`), and returns what the simulated
/// device holds (read without the shim) and what the ledger charges the tenant.
fn device_and_ledger_at_pause(node: &Node, probe: &mut Running, tenant: &str) -> (u64, u64) {
    probe.wait_for_line("waiting", Duration::from_secs(20));
    (device_used(node, 0), tenant_usage(node, tenant))
}

fn resume(file: &Path) {
    std::fs::write(file, b"").expect("resume file");
}

/// The red-team's loop (issue 15's adversarial pass, VMM): a tenant under a 2 GiB quota
/// creates 512 MiB, maps it, releases the handle at once (the documented pattern: the
/// mapping keeps the memory) and does it again. It held 10 GiB of the GPU while the ledger
/// showed 64 MiB; now the fourth round is refused at the quota, and the device never holds
/// more than the quota.
#[test]
fn vmm_memory_released_while_mapped_stays_charged_until_unmapped() {
    for path in ALL_PATHS {
        let node = Node::new();
        let mapped_file = node.root.path().join("mapped");
        let unmapped_file = node.root.path().join("unmapped");
        let mut probe = Running::spawn(&mut node.probe(
            path,
            "evil",
            Some("2Gi"),
            &[
                "vmm-loop",
                "10",
                "512M",
                "info",
                "wait-file",
                mapped_file.to_str().unwrap(),
                "vmm-unmap-loop",
                "info",
                "wait-file",
                unmapped_file.to_str().unwrap(),
            ],
        ));
        let (device, ledger) = device_and_ledger_at_pause(&node, &mut probe, "evil");
        let held = CONTEXT + 3 * 512 * MIB;
        assert_eq!(
            device, held,
            "{path:?}: the device holds the three mapped rounds"
        );
        assert!(device <= 2 * GIB, "{path:?}: {device} bytes on the device");
        assert_eq!(
            ledger, device,
            "{path:?}: the ledger charges what the device holds"
        );
        resume(&mapped_file);
        let (device, ledger) = device_and_ledger_at_pause(&node, &mut probe, "evil");
        assert_eq!(
            (device, ledger),
            (CONTEXT, CONTEXT),
            "{path:?}: all unmapped"
        );
        resume(&unmapped_file);
        let out = probe.wait_output(Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path:?}: {stdout}");
        let looped = line(&stdout, "vmm-loop");
        assert_eq!(field(looped, "mapped"), 3, "{path:?}: {looped}");
        assert_eq!(field(looped, "refused"), 7, "{path:?}: {looped}");
        assert_eq!(field(looped, "other"), 0, "{path:?}: {looped}");
        assert_eq!(field(line(&stdout, "vmm-unmap-loop"), "failed"), 0);
        let infos: Vec<_> = stdout.lines().filter(|l| l.starts_with("info")).collect();
        assert_eq!(field(infos[0], "free"), 2 * GIB - held, "{path:?}");
        assert_eq!(field(infos[1], "free"), 2 * GIB - CONTEXT, "{path:?}");
    }
}

/// The normal pattern (create, map, release, unmap) and its mirror (unmap before release)
/// both give everything back, and only at the last of the two.
#[test]
fn vmm_mapped_memory_is_given_back_after_unmap_and_release_in_either_order() {
    let orders: [(&str, &[&str]); 2] = [
        ("release first", &["vmm-release", "0"]),
        ("unmap first", &["vmm-unmap", "0", "64M"]),
    ];
    for (order, first) in orders {
        let second: &[&str] = if first[0] == "vmm-release" {
            &["vmm-unmap", "0", "64M"]
        } else {
            &["vmm-release", "0"]
        };
        let node = Node::new();
        let between = node.root.path().join("between");
        let after = node.root.path().join("after");
        let mut commands = vec!["vmm", "64M", "va-reserve", "64M", "vmm-map", "0", "0"];
        commands.extend_from_slice(first);
        commands.extend(["info", "wait-file", between.to_str().unwrap()]);
        commands.extend_from_slice(second);
        commands.extend(["info", "wait-file", after.to_str().unwrap()]);
        let mut probe =
            Running::spawn(&mut node.probe(CallPath::Dlsym, "a", Some("1Gi"), &commands));
        let at_first = device_and_ledger_at_pause(&node, &mut probe, "a");
        assert_eq!(
            at_first,
            (CONTEXT + 64 * MIB, CONTEXT + 64 * MIB),
            "{order}"
        );
        resume(&between);
        let at_second = device_and_ledger_at_pause(&node, &mut probe, "a");
        assert_eq!(at_second, (CONTEXT, CONTEXT), "{order}");
        resume(&after);
        let out = probe.wait_output(Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            field(line(&stdout, "vmm 67108864"), "rc"),
            0,
            "{order}: {stdout}"
        );
        assert_eq!(
            field(line(&stdout, "vmm-map"), "rc"),
            0,
            "{order}: {stdout}"
        );
        assert_eq!(
            field(line(&stdout, "vmm-map"), "access"),
            0,
            "{order}: {stdout}"
        );
        assert_eq!(
            field(line(&stdout, "vmm-release"), "rc"),
            0,
            "{order}: {stdout}"
        );
        assert_eq!(
            field(line(&stdout, "vmm-unmap"), "rc"),
            0,
            "{order}: {stdout}"
        );
        let infos: Vec<_> = stdout.lines().filter(|l| l.starts_with("info")).collect();
        assert_eq!(field(infos[0], "free"), GIB - CONTEXT - 64 * MIB, "{order}");
        assert_eq!(field(infos[1], "free"), GIB - CONTEXT, "{order}");
    }
}

/// NCCL's free: retain the handle from the address, release it, unmap, release again. The
/// retained reference keeps the memory charged until its own release.
#[test]
fn vmm_retained_handle_keeps_memory_charged_until_released() {
    for path in ALL_PATHS {
        let node = Node::new();
        let out = run_ok(&mut node.probe(
            path,
            "a",
            Some("1Gi"),
            &[
                "vmm",
                "64M",
                "va-reserve",
                "64M",
                "vmm-map",
                "0",
                "0",
                "vmm-retain",
                "4096",
                "vmm-release",
                "0",
                "vmm-unmap",
                "0",
                "64M",
                "info",
                "vmm-release",
                "0",
                "info",
                "vmm-retain",
                "0",
            ],
        ));
        let retains: Vec<_> = out
            .lines()
            .filter(|l| l.starts_with("vmm-retain"))
            .collect();
        assert_eq!(field(retains[0], "rc"), 0, "{path:?}: {out}");
        assert_eq!(
            field(retains[0], "index"),
            0,
            "{path:?}: the handle that maps it"
        );
        assert_ne!(
            field(retains[1], "rc"),
            0,
            "{path:?}: nothing is mapped any more"
        );
        for release in out.lines().filter(|l| l.starts_with("vmm-release")) {
            assert_eq!(field(release, "rc"), 0, "{path:?}: {out}");
        }
        let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
        assert_eq!(
            field(infos[0], "free"),
            GIB - CONTEXT - 64 * MIB,
            "{path:?}: retained"
        );
        assert_eq!(field(infos[1], "free"), GIB - CONTEXT, "{path:?}");
        assert_eq!(tenant_usage(&node, "a"), 0, "given back at exit");
    }
}

/// One range mapped by two handles, both released: an unmap of part of a mapping is
/// refused and changes nothing, an unmap of one whole mapping frees that handle's memory
/// only, and the rest goes with the last unmap.
#[test]
fn vmm_unmap_frees_exactly_the_handles_it_unmaps() {
    let node = Node::new();
    let done = node.root.path().join("done");
    let mut probe = Running::spawn(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "vmm",
            "64M",
            "vmm",
            "32M",
            "va-reserve",
            "96M",
            "vmm-map",
            "0",
            "0",
            "vmm-map",
            "1",
            "64M",
            "vmm-release",
            "0",
            "vmm-release",
            "1",
            "vmm-unmap",
            "32M",
            "64M",
            "info",
            "vmm-unmap",
            "64M",
            "32M",
            "info",
            "wait-file",
            done.to_str().unwrap(),
            "vmm-unmap",
            "0",
            "64M",
            "info",
        ],
    ));
    let (device, ledger) = device_and_ledger_at_pause(&node, &mut probe, "a");
    assert_eq!((device, ledger), (CONTEXT + 64 * MIB, CONTEXT + 64 * MIB));
    resume(&done);
    let out = probe.wait_output(Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unmaps: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with("vmm-unmap"))
        .collect();
    assert_ne!(field(unmaps[0], "rc"), 0, "cuts both mappings: {stdout}");
    assert_eq!(field(unmaps[1], "rc"), 0, "{stdout}");
    assert_eq!(field(unmaps[2], "rc"), 0, "{stdout}");
    let infos: Vec<_> = stdout.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(
        field(infos[0], "free"),
        GIB - CONTEXT - 96 * MIB,
        "the refused unmap"
    );
    assert_eq!(field(infos[1], "free"), GIB - CONTEXT - 64 * MIB);
    assert_eq!(field(infos[2], "free"), GIB - CONTEXT);
}

/// A map that fails (the range is taken) adds no reference: the handle's release then
/// gives its memory back at once.
#[test]
fn vmm_a_failed_map_changes_nothing() {
    let node = Node::new();
    let out = run_ok(&mut node.probe(
        CallPath::Dlsym,
        "a",
        Some("1Gi"),
        &[
            "vmm",
            "64M",
            "vmm",
            "64M",
            "va-reserve",
            "64M",
            "vmm-map",
            "0",
            "0",
            "vmm-map",
            "1",
            "0",
            "vmm-release",
            "1",
            "info",
            "vmm-release",
            "0",
            "info",
        ],
    ));
    let maps: Vec<_> = out.lines().filter(|l| l.starts_with("vmm-map")).collect();
    assert_eq!(field(maps[0], "rc"), 0, "{out}");
    assert_ne!(field(maps[1], "rc"), 0, "the range is mapped: {out}");
    let infos: Vec<_> = out.lines().filter(|l| l.starts_with("info")).collect();
    assert_eq!(
        field(infos[0], "free"),
        GIB - CONTEXT - 64 * MIB,
        "#1 is gone"
    );
    assert_eq!(
        field(infos[1], "free"),
        GIB - CONTEXT - 64 * MIB,
        "#0 is still mapped"
    );
}
