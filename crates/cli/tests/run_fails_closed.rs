//! Issue 15, item 4: `gpuslice run` started commands with no limit at all when the shim it
//! was given was not the shim, or the GPU it was given did not exist (8 GiB allocated under
//! `--memory 2Gi`). Now it proves both before the command starts, and otherwise exits 2 with
//! one line saying what was wrong. The tests run on the simulated GPU and check that the
//! command never ran.

use std::path::{Path, PathBuf};

use gpuslice_ledger::LAYOUT_VERSION;
use object::{Object, ObjectSection, ObjectSymbol, SymbolSection};

use crate::util::*;

/// `cudaprobe dlsym fill 64M` under `run --memory 2Gi` with the node's shim and `extra`
/// flags: allocates until refused, and says how much it got.
fn fill_under_2gi(node: &Node, extra: &[&str]) -> Outcome {
    fill_under_2gi_with(node, &node.shim, extra)
}

/// [`fill_under_2gi`] with `shim` as `--shim`.
fn fill_under_2gi_with(node: &Node, shim: &Path, extra: &[&str]) -> Outcome {
    let mut command = node.gpuslice(&["run", "--memory", "2Gi", "--dir"]);
    command
        .arg(node.dir.ledger_dir())
        .arg("--shim")
        .arg(shim)
        .args(extra)
        .arg("--")
        .arg(cudaprobe())
        .args(["dlsym", "fill", "64M"]);
    finish(command)
}

/// Asserts that `run` refused with exit 2 and one line containing `needle`, before the
/// command started.
fn assert_refused(out: &Outcome, needle: &str) {
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "the command ran: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(out.stderr.contains(needle), "{needle:?} in {out:?}");
}

/// A copy of the shim of this build in `<node>/<name>/libgpuslice.so`, changed by `patch`.
fn patched_shim(node: &Node, name: &str, patch: impl FnOnce(&mut [u8])) -> PathBuf {
    let mut bytes = std::fs::read(&node.shim).expect("read the shim");
    patch(&mut bytes);
    let dir = node.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("libgpuslice.so");
    std::fs::write(&path, bytes).expect("write the copy");
    path
}

#[test]
fn run_refuses_a_shim_that_is_not_the_shim() {
    let node = Node::new();
    let empty = node.dir.not_a_shim();
    assert_refused(
        &fill_under_2gi_with(&node, &empty, &[]),
        "is not an ELF shared object",
    );
    // A shared object, and one that even exports the driver's functions, but not the shim.
    let other_library = artifact("libfakecuda.so");
    assert_refused(
        &fill_under_2gi_with(&node, &other_library, &[]),
        "gpuslice_ledger_layout_version: it is not the gpuslice shim",
    );
    assert!(
        !node.dir.ledger_dir().exists(),
        "nothing is created before the checks pass"
    );
    // The shim itself, for contrast: the same command is held to its quota.
    let out = fill_under_2gi(&node, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(field(&out.stdout, "fill", "bytes"), 2 * GIB - CONTEXT);
}

/// Where in the file the shim's marker (its ledger layout version) is stored.
fn marker_offset(bytes: &[u8]) -> usize {
    let file = object::File::parse(bytes).expect("the shim is ELF");
    let marker = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("gpuslice_ledger_layout_version"))
        .expect("the shim exports its marker");
    let SymbolSection::Section(index) = marker.section() else {
        panic!("the marker has no section");
    };
    let section = file.section_by_index(index).expect("section");
    let (start, _) = section
        .file_range()
        .expect("the marker is stored in the file");
    usize::try_from(start + marker.address() - section.address()).expect("offset")
}

#[test]
fn run_refuses_a_shim_of_another_ledger_layout_version() {
    let node = Node::new();
    let other = LAYOUT_VERSION + 1;
    let shim = patched_shim(&node, "other-layout", |bytes| {
        let at = marker_offset(bytes);
        bytes[at..at + 4].copy_from_slice(&other.to_le_bytes());
    });
    assert_refused(
        &fill_under_2gi_with(&node, &shim, &[]),
        &format!(
            "built for ledger layout version {other} and this gpuslice uses version {LAYOUT_VERSION}"
        ),
    );
}

/// Marks the file as made for an operating system ABI that glibc's loader does not take
/// (`EI_OSABI`, byte 7 of the ELF identification): the loader refuses to map it ("ELF file
/// OS ABI invalid"), while everything `run` can read in the file is still the shim.
fn foreign_os_abi(bytes: &mut [u8]) {
    bytes[7] = 0x42;
}

#[test]
fn run_refuses_a_shim_the_loader_cannot_preload() {
    let node = Node::new();
    let shim = patched_shim(&node, "unloadable", foreign_os_abi);
    // What `run` must not let happen: the loader says it ignores the shim, and the program
    // runs without it.
    let ignored = finish(node.gpuslice(&["--version"]).env("LD_PRELOAD", &shim));
    assert_eq!(ignored.code, Some(0), "{ignored:?}");
    assert!(
        ignored.stderr.contains("cannot be preloaded"),
        "the loader was expected to ignore the patched shim: {ignored:?}"
    );

    assert_refused(
        &fill_under_2gi_with(&node, &shim, &[]),
        "the dynamic loader does not preload the shim",
    );
}

#[test]
fn run_refuses_a_gpu_no_gpu_has() {
    let node = Node::new();
    let missing = "GPU-deadbeef-0000-4000-8000-000000000000";
    assert_refused(
        &fill_under_2gi(&node, &["--gpu", missing]),
        "this machine has no such GPU",
    );
    assert_refused(&fill_under_2gi(&node, &["--gpu", "1"]), "no such GPU");
    // The simulated GPU itself, for contrast.
    let out = fill_under_2gi(&node, &["--gpu", FAKE_GPU0]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(field(&out.stdout, "fill", "bytes"), 2 * GIB - CONTEXT);
}
